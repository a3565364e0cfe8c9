"""Names of earlier releases, kept for one release: the 2D flows live in :mod:`tfftmol.toy2d`, the digits in
:mod:`tfftmol.digits`."""
