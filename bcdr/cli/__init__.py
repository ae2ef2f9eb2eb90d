"""bcdr.cli"""
