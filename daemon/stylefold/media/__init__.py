"""Image I/O, drawing and the output files of SPEC §5. Pillow and numpy; no torch."""
