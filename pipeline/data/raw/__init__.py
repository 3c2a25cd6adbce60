"""Raw readers of the Data2Seq modalities; importing the package registers every plug-in (see base.py)."""

from pipeline.data.raw.base import RAW_READERS, RawItem, RawReader, RawSettings, register_raw_reader

__all__ = ["RAW_READERS", "RawItem", "RawReader", "RawSettings", "register_raw_reader"]
