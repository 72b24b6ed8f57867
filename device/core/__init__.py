"""Pure logic: no threads, no I/O, no native libraries; time comes in as an argument."""
