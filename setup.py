"""Builds the C extensions; everything else is in pyproject.toml.

scanner/_walk.c is the scanner's worklist walk; runtime/_clock.c is the VM's
instruction clock (a native Unicorn block hook); runtime/_isolation.c guards
the hypervisor area (a native Unicorn protection hook).  They need only a C compiler
and Python's headers (capstone's and Unicorn's functions reach them as
addresses at run time, so no other header or library is linked).
`pip install -e .` compiles them in place.
"""
from setuptools import Extension, setup

FLAGS = ["-O2", "-std=c11", "-Wall"]

setup(ext_modules=[Extension("scanner._walk", ["scanner/_walk.c"], extra_compile_args=FLAGS),
                   Extension("runtime._clock", ["runtime/_clock.c"], extra_compile_args=FLAGS),
                   Extension("runtime._isolation", ["runtime/_isolation.c"], extra_compile_args=FLAGS)])
