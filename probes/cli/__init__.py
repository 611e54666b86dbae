"""The probe commands: ``python -m probes.ideal_words`` (:mod:`.ideal_words`) and
``python -m probes.linear`` (:mod:`.linear`), both writing run directories (:class:`interp.runs.rundir.RunDir`)."""
