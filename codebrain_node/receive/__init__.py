"""Receive: the Storage SCP (scp.py), the durable spool (spool.py), the association events the SCP raises
(associations.py) and the database recorder (recorder.py)."""
