"""bcdr.scheduler"""
