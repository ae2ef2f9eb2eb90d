"""bcdr.disks"""
