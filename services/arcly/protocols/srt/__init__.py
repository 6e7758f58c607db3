"""SRT: MPEG-TS over SRT, ingest and playback (libsrt via ctypes)."""
