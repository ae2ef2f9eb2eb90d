"""bcdr.archive"""
