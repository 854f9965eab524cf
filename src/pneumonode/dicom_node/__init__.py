"""The network edge: SCP (C-ECHO, C-STORE in), SCU (C-STORE out), peers, durable spool."""

__all__: list[str] = []
