from bcdr.entry import run

raise SystemExit(run())
