"""The run folder protocol: how a run lives on the runs root, and who may write it.

``run_directory`` reuses or claims a run, resumes and commits it (``run.json`` last, in one
step; an overwrite stages the new commit and ``swap`` swaps it in, the old run served until
then); ``fencing`` lets only the newest attempt write; ``ownership`` keeps two workflows off
one folder; ``checkpoints`` seals and finds resumable checkpoints; ``paths`` confines every
local path a request names to the allowed roots. Its JSON files are typed manifests
(``shared.manifests``).
"""
