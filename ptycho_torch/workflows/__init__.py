"""Workflow entry points mirroring PtychoPINN's TensorFlow ``ptycho.workflows`` functions."""
