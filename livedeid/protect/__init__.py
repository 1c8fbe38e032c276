"""Turning a tracked face into a protected one in the frame.

Lives here: the sliding windows of aligned crops, the residuals reused between engine
runs, the composite (residual under the feathered face oval), the fail-closed hiding
policy.
May import: ``livedeid.core``. Never torch or Qt.
"""
