"""bcdr.repository"""
