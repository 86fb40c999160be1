"""One run on every GPU of a pod: the worker launches ``torchrun`` (``launcher``), each rank
runs the same training core (``rank_main``), the ranks agree through ``ranks`` and talk to the
worker through files in a private folder (``rank_channel``); ``process_guard`` makes every
child die with its parent.
"""
