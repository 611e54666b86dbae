"""The probe commands: ``python -m probes.ideal_words`` (:mod:`.ideal_words`) and
``python -m probes.linear`` (:mod:`.linear`); :mod:`.report` holds their shared report helpers."""
