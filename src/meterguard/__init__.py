"""meterguard: stops a limited mobile-data plan from leaking away.

The kernel (nftables) counts and enforces; this package reads the counters,
keeps the ledger, and turns usage into decisions.
"""

__version__ = "0.1.0"
