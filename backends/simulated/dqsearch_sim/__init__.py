"""dqsearch-sim: analytical accelerators as dqsearch backends — the worked example for plugin authors.

A device is a TOML file (see `devices/`); `sim-stripes`, `sim-bitfusion` and `sim-npu` are the
shipped ones and `sim --spec PATH` loads any other. Latencies are computed, not timed, so tables
are exact and instant: use them to study how a search reacts to a device's cost structure.
"""

from .backend import SimulatedBackend, bitfusion, from_spec, npu, stripes
from .spec import DeviceSpec, SpecError, load_spec, shipped_specs

__all__ = ["DeviceSpec", "SimulatedBackend", "SpecError", "bitfusion", "from_spec", "load_spec",
           "npu", "shipped_specs", "stripes"]
