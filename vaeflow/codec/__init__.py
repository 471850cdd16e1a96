"""The codec layer: the stream format, the codec engine, rate control, presets, calibration and the one-image API."""
