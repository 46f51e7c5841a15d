"""Receive: the Storage SCP (scp.py), the durable spool (spool.py) and the database recorder (recorder.py)."""
