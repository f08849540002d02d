"""Measurement: guest-visible observations of a run, fidelity checking against pure
emulation (`bt.measure.fidelity`), and the `bt-bench` mode matrix (`bt.measure.bench`).

Everything here drives the runtime from outside through `runtime.vm.VM` and what a
VM object exposes (`vm.uc`, `vm.mem`, `vm.mode`, `RunResult`); nothing here
changes how a guest runs.
"""
