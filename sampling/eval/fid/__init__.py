"""``hart fid``: Fréchet distance (FID / FD-EffNet) and KID, in four parts: ``stats``
(statistics and distances), ``sources`` (where images come from), ``embed`` (features of
image sets and of model samples, reference cache) and ``cli`` (the command).
"""
