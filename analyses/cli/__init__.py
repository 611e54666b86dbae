"""The analyses commands: ``python -m analyses.alignment`` (:mod:`.alignment`, report in
:mod:`.report`) and ``python -m analyses.extract`` (:mod:`.extract`)."""
