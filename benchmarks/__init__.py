"""Benchmarks: edit quality (GR/LR frontier), sequential editing, and cost."""
