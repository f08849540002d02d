"""Builds the scanner's C walk (scanner/_walk.c); everything else is in pyproject.toml.

The extension needs only a C compiler and Python's headers (capstone's
functions reach it as addresses at run time, so no capstone header or
library is linked).  `pip install -e .` compiles it in place.
"""
from setuptools import Extension, setup

setup(ext_modules=[Extension("scanner._walk", ["scanner/_walk.c"],
                             extra_compile_args=["-O2", "-std=c11", "-Wall"])])
