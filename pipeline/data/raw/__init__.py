"""Raw readers of the Data2Seq modalities; importing the package registers every plug-in (see base.py)."""

from pipeline.data.raw.base import RAW_READERS, RawItem, RawReader, RawSettings, register_raw_reader
from pipeline.data.raw import graph, tabular  # noqa: F401,E402  (registers the plug-ins)
from pipeline.data.raw import audio, imu, time_series  # noqa: F401,E402  (registers the plug-ins)

__all__ = ["RAW_READERS", "RawItem", "RawReader", "RawSettings", "register_raw_reader"]
