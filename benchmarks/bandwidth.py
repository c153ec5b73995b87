"""Timing and roofline helpers shared by genfast's benchmarks: they live in genfast.cli.bench (so the
installed `genfast bench` has them too); this module keeps the scripts' imports working."""
from genfast.cli.bench import Row, copy_bandwidth_gbs, machine_header, print_table, time_graph_us, time_us

__all__ = ["Row", "copy_bandwidth_gbs", "machine_header", "print_table", "time_graph_us", "time_us"]
