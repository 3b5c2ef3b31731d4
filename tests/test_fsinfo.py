"""What holds a path (``safecache._fsinfo``): the mount table, read as the kernel writes it."""

from __future__ import annotations

from safecache import _fsinfo


def test_mount_lookup_takes_the_longest_mount_point_and_unescapes() -> None:
    mounts = (
        "/dev/sda1 / ext4 rw 0 0\n"
        "server:/export /mnt/nfs nfs4 rw 0 0\n"
        "//srv/share /mnt/nfs/my\\040share cifs rw 0 0\n"
        "tmpfs /mnt/nfsx tmpfs rw 0 0\n"
    )
    assert _fsinfo.mount_of("/home/me", mounts) == ("ext4", "/", "/dev/sda1")
    assert _fsinfo.mount_of("/mnt/nfs/cache", mounts)[0] == "nfs4"  # type: ignore[index]
    assert _fsinfo.mount_of("/mnt/nfs/my share/c", mounts)[:2] == ("cifs", "/mnt/nfs/my share")  # type: ignore[index]
    assert _fsinfo.mount_of("/mnt/nfsx/c", mounts)[0] == "tmpfs"  # type: ignore[index]
    stacked = mounts + "overlay / overlay rw 0 0\n"
    assert _fsinfo.mount_of("/home", stacked)[0] == "overlay"  # type: ignore[index]
