"""Imported first by the worker processes' forkserver (`tda.workers`): it, and every
process it forks, runs at niceness 19 in a scheduling group of its own.

The forkserver starts when a page first needs a chain, which on a shared server is when
visitors are opening pages: its imports (torch, diffusers, tda) took 26 s of a 2-core
machine's time at normal priority while 20 browsers drew Home beside it, and the class's
featured Home finished 12 s later than with the forkserver held back. It only imports
and forks, never computes for a visitor, so it always yields.
"""

from .workers import yield_cpu

NICE = 19

yield_cpu(NICE)
