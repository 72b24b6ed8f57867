"""The bench: the real daemon against an agent over loopback audio files, with a report.

``voice-appliance bench`` (device/commands/bench.py) is the entry point;
:mod:`device.bench.runner` drives a run, :mod:`device.bench.report` owns the
``report.json`` schema, :mod:`device.bench.timeline` draws the picture and
:mod:`device.bench.fixtures` holds the bundled demo.
"""
