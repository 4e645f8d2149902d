"""The style-transfer engine: pure torch, no I/O, no printing.

Nothing in this package imports anything outside it (no pydantic, rich, watchdog, PIL
or the daemon). This file imports nothing either: ``engine.layers`` (VGG19's layer
names) and ``engine.steps`` (one step's losses) are torch-free, so the preset schema
and the hot folder use them without loading torch. Import from the modules:
``features`` (VGG19 taps, weights), ``losses``, ``stylize`` (the loop), ``pyramid``
(coarse to fine), ``color``, ``runtime`` (device, precision, allocator).
"""
