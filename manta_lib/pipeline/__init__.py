"""Map/reduce analysis pipelines over traces (seed 000)."""

from manta_lib.pipeline.computation import LevelSpec, MapReduceComputation

__all__ = ["LevelSpec", "MapReduceComputation"]
