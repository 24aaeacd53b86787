"""meterguard.lab: the test bench.  Real kernel (namespaces, nftables, cgroup v2), no real carrier.

See lab.py for the entry point (`Lab`), topology.py for the network and why it is
quiet, carrier.py for the independent billing meter and traffic.py for the
traffic programs.
"""

from meterguard.lab.apps import LabApp, TrafficHandle
from meterguard.lab.carrier import Carrier, CarrierCounts, Count, PortCounts
from meterguard.lab.cgroups import LabCgroup, cgroup2_mount
from meterguard.lab.lab import Lab, PingResult
from meterguard.lab.netns import LabError
from meterguard.lab.topology import LinkStats
from meterguard.lab.traffic_client import ClientResult
from meterguard.lab.traffic_server import PortStats

cleanup_stale = Lab.cleanup_stale
cleanup_orphans = Lab.cleanup_orphans

__all__ = [
    "Carrier",
    "CarrierCounts",
    "ClientResult",
    "Count",
    "Lab",
    "LabApp",
    "LabCgroup",
    "LabError",
    "LinkStats",
    "PingResult",
    "PortCounts",
    "PortStats",
    "TrafficHandle",
    "cgroup2_mount",
    "cleanup_orphans",
    "cleanup_stale",
]
