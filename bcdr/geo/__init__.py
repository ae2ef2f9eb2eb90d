"""bcdr.geo"""
