"""bcdr.compliance"""
