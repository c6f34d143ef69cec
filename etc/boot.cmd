# otad A/B boot script for a U-Boot without CONFIG_BOOTCOUNT_LIMIT (stock rpi_0_w, Debian's
# builds): counts trial boots and rolls back as BOOTCOUNT_ENV + altbootcmd would (otad/sim/uboot.py
# emulates those; docs/architecture.md, "A/B, the boot environment and the trial", says who
# writes what). Build and install next to uboot.env on p1, where distro_bootcmd finds it:
#   mkimage -A arm -T script -C none -n "otad A/B boot" -d boot.cmd boot.scr
#
# The env is the one U-Boot already loaded from uboot.env (ENV_IS_IN_FAT), so saveenv writes
# it back there. Variables: rootpart (2 or 3), upgrade_available, bootcount, bootlimit. otad arms
# a trial with "rootpart=Y upgrade_available=1 bootcount=0" and confirms with
# "upgrade_available=0 bootcount=0"; this script clears both when it rolls back.
#
# A U-Boot with BOOTCOUNT_LIMIT + BOOTCOUNT_ENV counts by itself: give its env
# otad_uboot_counts=1 (so this script does not count twice) and this altbootcmd:
#   if test "${rootpart}" = "2"; then setenv rootpart 3; else setenv rootpart 2; fi; setenv upgrade_available 0; setenv bootcount 0; saveenv; run bootcmd

# A bad-CRC uboot.env leaves U-Boot on its default env, which has no rootpart: boot slot 2,
# the known-good one, without saving (the default env would replace the whole file).
if test "${rootpart}" != 2 && test "${rootpart}" != 3; then
	setenv rootpart 2
fi

# Count only while a trial is armed, like BOOTCOUNT_ENV: no SD card write on a normal boot.
if test "${otad_uboot_counts}" != 1 && test "${upgrade_available}" -ne 0; then
	test -n "${bootcount}" || setenv bootcount 0
	# setexpr reads and writes hex: 0..9 are the same in decimal, which otad reads, as long as
	# bootlimit <= 8. "0x" makes test read the count as hex, so larger limits still compare right.
	setexpr bootcount ${bootcount} + 1
	if test "${bootlimit}" -ne 0 && test 0x${bootcount} -gt ${bootlimit}; then
		echo "otad: boot ${bootcount} of slot ${rootpart} exceeds bootlimit ${bootlimit}: rolling back"
		if test "${rootpart}" = 2; then setenv rootpart 3; else setenv rootpart 2; fi
		setenv upgrade_available 0
		setenv bootcount 0
	fi
	# One saveenv for count and rollback: a power cut leaves the old env or the new one.
	saveenv
fi

# Kernel and dtb come from the slot so they switch with the rootfs; without a dtb there, the
# firmware's (with config.txt's overlays) at fdt_addr. ttyS0 is the Zero W's mini UART: the
# firmware's "serial0" rewriting does not apply to U-Boot's bootargs.
setenv bootargs "console=ttyS0,115200 console=tty1 root=/dev/mmcblk0p${rootpart} otad.rootpart=${rootpart} rootfstype=ext4 rootwait"
setenv otad_fdt ${fdt_addr}
if load mmc 0:${rootpart} ${fdt_addr_r} boot/${fdtfile}; then
	setenv otad_fdt ${fdt_addr_r}
fi
if load mmc 0:${rootpart} ${kernel_addr_r} boot/zImage; then
	bootz ${kernel_addr_r} - ${otad_fdt}
fi

# Only reached if the slot cannot boot. During a trial, reset so the next boot counts: U-Boot
# v2023.01 has no Pi watchdog driver, so nothing else would end the wait at the prompt.
echo "otad: slot ${rootpart} did not boot"
if test "${upgrade_available}" -ne 0; then
	sleep 3
	reset
fi
