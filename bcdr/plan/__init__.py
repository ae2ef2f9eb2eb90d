"""bcdr.plan"""
