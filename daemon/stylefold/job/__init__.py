"""One job: its description (``spec``, torch-free), the run function (``run``), its
checkpoints and report, and publishing a finished render (``publish``)."""
