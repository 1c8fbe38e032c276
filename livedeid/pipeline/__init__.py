"""The live graph, wired in one place.

Lives here: ``build_processor`` (settings -> a frame processor, CPU or device), the frame
processors, the threaded runner with bounded queues, and the stage statistics.
May import: ``core``, ``io``, ``tracking``, ``protect``, ``inference``, ``rppg``. Never the
CLI or Qt; torch only in ``device`` (the GPU processor), which is loaded on demand.
"""
