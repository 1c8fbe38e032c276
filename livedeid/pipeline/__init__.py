"""The live graph, wired in one place.

Lives here: ``factory.build_processor`` (settings -> a frame processor, CPU or device: the
one wiring point), the frame processors (``processor`` on the CPU, ``device`` with the
middle stages on a torch device), the threaded ``runner`` with bounded queues, the
stage ``stats``, the one protection ``status`` the panel and ``run`` show, and one recorded
video through it all (``file_job``: what ``process`` and every ``batch`` task run).
May import: ``core``, ``io``, ``tracking``, ``protect``, ``inference``, ``rppg``. Never the
CLI or Qt; torch only in ``device`` (the GPU processor), which the factory loads on demand.
"""
