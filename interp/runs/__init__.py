"""The run machinery every command shares: run directories with resume and settings checks
(:mod:`.rundir`), markdown reports (:mod:`.report`) and seaborn figures (:mod:`.plots`)."""
