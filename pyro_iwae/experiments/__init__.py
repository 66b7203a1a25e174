"""
What the example scripts share, kept apart from the library: the run configuration and
its flags (:mod:`.config`), one-line errors (:mod:`.cli`), a run's metrics and pictures
(:mod:`.outputs`), the Table 1 grid (:mod:`.grid`), and processes sharing the work under
``torchrun`` (:mod:`.distributed`).
"""
