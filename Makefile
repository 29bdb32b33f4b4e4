# Building and installing Empath the traditional way.
#
#   make                                   release build of every binary
#   make install PREFIX=/usr/local DESTDIR=/tmp/stage
#   make uninstall PREFIX=/usr/local
#   make deb                               .deb with cargo-deb (cargo install cargo-deb)
#   make check-etc                         promtool and systemd-analyze on etc/
#
# Layout: the master and the admin tools in $(SBINDIR), mailq in
# $(BINDIR), the daemons in $(LIBEXECDIR)/empath (the master finds them
# there), libempath.so (which plugin modules link with, -lempath) in
# $(LIBDIR) and its header empath.h in $(INCLUDEDIR), man pages, the
# config in $(SYSCONFDIR)/empath (only if absent), the systemd unit, the
# init.d script, logrotate, and the alert rules and Grafana dashboard in
# $(DATADIR)/empath. With no DESTDIR, install runs $(LDCONFIG) so that
# the dynamic loader finds the new libempath.so.

PREFIX ?= /usr/local
DESTDIR ?=
BINDIR ?= $(PREFIX)/bin
SBINDIR ?= $(PREFIX)/sbin
LIBEXECDIR ?= $(PREFIX)/libexec
LIBDIR ?= $(PREFIX)/lib
INCLUDEDIR ?= $(PREFIX)/include
DATADIR ?= $(PREFIX)/share
MANDIR ?= $(DATADIR)/man
SYSCONFDIR ?= $(if $(filter /usr,$(PREFIX)),/etc,$(PREFIX)/etc)
SYSTEMDDIR ?= $(PREFIX)/lib/systemd/system
# /var for the system's prefixes, else under the prefix (a test tree).
LOCALSTATEDIR ?= $(if $(filter /usr /usr/local,$(PREFIX)),/var,$(PREFIX)/var)
SPOOLDIR ?= $(LOCALSTATEDIR)/spool/empath
LOGDIR ?= $(LOCALSTATEDIR)/log/empath

CARGO ?= cargo
PROFILE ?= release
TARGET_DIR ?= target
BUILT = $(TARGET_DIR)/$(PROFILE)
CARGO_PROFILE_FLAG = $(if $(filter release,$(PROFILE)),--release,--profile $(PROFILE))
LIBEMPATH ?= $(BUILT)/libempath.so
LDCONFIG ?= ldconfig

DAEMONS = empath-smtpd empath-cleanup empath-qmgr empath-smtp-out empath-local empath-bounce empath-anvil empath-showq
SBIN_PROGRAMS = empath empathctl sendmail newaliases
BIN_PROGRAMS = mailq
MAN1 = man/mailq.1 man/sendmail.1
MAN3 = man/empath-modules.3
MAN5 = man/empath.config.ron.5 man/aliases.5
MAN8 = man/empath.8 man/empath-anvil.8 man/empathctl.8 man/empath-local.8 man/newaliases.8 \
	man/empath-smtpd.8 man/empath-cleanup.8 man/empath-qmgr.8 \
	man/empath-smtp-out.8 man/empath-bounce.8 man/empath-showq.8

INSTALL ?= install
# Installed copies of the units and scripts point at the chosen directories.
SUBST = sed -e 's|/usr/sbin/|$(SBINDIR)/|g' -e 's|/etc/empath/|$(SYSCONFDIR)/empath/|g' \
	-e 's|/var/spool/empath|$(SPOOLDIR)|g' -e 's|/var/log/empath|$(LOGDIR)|g'

.PHONY: all build install uninstall deb check-etc

all: build

# --lib: libempath.so is a library, not a binary.
build:
	$(CARGO) build $(CARGO_PROFILE_FLAG) --workspace --bins --lib

install:
	@for f in $(SBIN_PROGRAMS) $(BIN_PROGRAMS) $(DAEMONS); do \
		test -x $(BUILT)/$$f || { echo "$(BUILT)/$$f is missing: run make (or PROFILE=debug)" >&2; exit 1; }; \
	done
	@test -f $(LIBEMPATH) || { echo "$(LIBEMPATH) is missing: run make (or PROFILE=debug)" >&2; exit 1; }
	$(INSTALL) -d $(DESTDIR)$(SBINDIR) $(DESTDIR)$(BINDIR) $(DESTDIR)$(LIBEXECDIR)/empath
	for f in $(SBIN_PROGRAMS); do $(INSTALL) -m 0755 $(BUILT)/$$f $(DESTDIR)$(SBINDIR)/$$f; done
	for f in $(BIN_PROGRAMS); do $(INSTALL) -m 0755 $(BUILT)/$$f $(DESTDIR)$(BINDIR)/$$f; done
	for f in $(DAEMONS); do $(INSTALL) -m 0755 $(BUILT)/$$f $(DESTDIR)$(LIBEXECDIR)/empath/$$f; done
	$(INSTALL) -d $(DESTDIR)$(LIBDIR) $(DESTDIR)$(INCLUDEDIR)
	$(INSTALL) -m 0644 $(LIBEMPATH) $(DESTDIR)$(LIBDIR)/libempath.so
	$(INSTALL) -m 0644 modules/include/empath.h $(DESTDIR)$(INCLUDEDIR)/empath.h
	@if [ -z "$(DESTDIR)" ]; then $(LDCONFIG) || echo "$(LDCONFIG) failed: link modules with -Wl,-rpath,$(LIBDIR)" >&2; fi
	$(INSTALL) -d $(DESTDIR)$(MANDIR)/man1 $(DESTDIR)$(MANDIR)/man3 $(DESTDIR)$(MANDIR)/man5 $(DESTDIR)$(MANDIR)/man8
	$(INSTALL) -m 0644 $(MAN1) $(DESTDIR)$(MANDIR)/man1/
	$(INSTALL) -m 0644 $(MAN3) $(DESTDIR)$(MANDIR)/man3/
	$(INSTALL) -m 0644 $(MAN5) $(DESTDIR)$(MANDIR)/man5/
	$(INSTALL) -m 0644 $(MAN8) $(DESTDIR)$(MANDIR)/man8/
	$(INSTALL) -d $(DESTDIR)$(SYSCONFDIR)/empath
	test -e $(DESTDIR)$(SYSCONFDIR)/empath/empath.config.ron || \
		$(INSTALL) -m 0640 etc/empath.config.ron $(DESTDIR)$(SYSCONFDIR)/empath/empath.config.ron
	$(INSTALL) -d $(DESTDIR)$(SYSTEMDDIR) $(DESTDIR)$(SYSCONFDIR)/init.d $(DESTDIR)$(SYSCONFDIR)/logrotate.d
	$(SUBST) etc/systemd/empath.service > $(DESTDIR)$(SYSTEMDDIR)/empath.service
	chmod 0644 $(DESTDIR)$(SYSTEMDDIR)/empath.service
	$(SUBST) etc/init.d/empath > $(DESTDIR)$(SYSCONFDIR)/init.d/empath
	chmod 0755 $(DESTDIR)$(SYSCONFDIR)/init.d/empath
	$(INSTALL) -m 0644 etc/logrotate.d/empath $(DESTDIR)$(SYSCONFDIR)/logrotate.d/empath
	$(INSTALL) -d $(DESTDIR)$(DATADIR)/empath
	$(INSTALL) -m 0644 etc/prometheus-alerts.yml etc/grafana/empath-dashboard.json $(DESTDIR)$(DATADIR)/empath/
	$(INSTALL) -d $(DESTDIR)$(DATADIR)/doc/empath
	$(INSTALL) -m 0644 docs/ALERT_RUNBOOKS.md $(DESTDIR)$(DATADIR)/doc/empath/
	$(INSTALL) -d $(DESTDIR)$(SYSCONFDIR)/fail2ban/filter.d $(DESTDIR)$(SYSCONFDIR)/fail2ban/jail.d
	$(INSTALL) -m 0644 etc/fail2ban/filter.d/empath-auth.conf $(DESTDIR)$(SYSCONFDIR)/fail2ban/filter.d/
	$(INSTALL) -m 0644 etc/fail2ban/jail.d/empath.conf $(DESTDIR)$(SYSCONFDIR)/fail2ban/jail.d/
	# The traditional names of an MTA's commands, as Debian's MTAs install them.
	$(INSTALL) -d $(DESTDIR)$(LIBDIR)
	ln -sf $(SBINDIR)/sendmail $(DESTDIR)$(LIBDIR)/sendmail
	ln -sf $(SBINDIR)/newaliases $(DESTDIR)$(BINDIR)/newaliases
	# The directories the systemd unit's ReadWritePaths= names.
	$(INSTALL) -d -m 0755 $(DESTDIR)$(SPOOLDIR)
	$(INSTALL) -d -m 0750 $(DESTDIR)$(LOGDIR)
	@echo "Installed. Create the mail user (useradd --system --home-dir $(SPOOLDIR) --shell /usr/sbin/nologin empath),"
	@echo "let it read the config (chgrp empath $(SYSCONFDIR)/empath/empath.config.ron), then start empath."

uninstall:
	for f in $(SBIN_PROGRAMS); do rm -f $(DESTDIR)$(SBINDIR)/$$f; done
	for f in $(BIN_PROGRAMS); do rm -f $(DESTDIR)$(BINDIR)/$$f; done
	rm -rf $(DESTDIR)$(LIBEXECDIR)/empath $(DESTDIR)$(DATADIR)/empath
	rm -f $(DESTDIR)$(LIBDIR)/libempath.so $(DESTDIR)$(INCLUDEDIR)/empath.h
	rm -f $(DESTDIR)$(LIBDIR)/sendmail $(DESTDIR)$(BINDIR)/newaliases
	rm -rf $(DESTDIR)$(DATADIR)/doc/empath
	rm -f $(DESTDIR)$(SYSCONFDIR)/fail2ban/filter.d/empath-auth.conf $(DESTDIR)$(SYSCONFDIR)/fail2ban/jail.d/empath.conf
	for f in $(notdir $(MAN1)); do rm -f $(DESTDIR)$(MANDIR)/man1/$$f; done
	for f in $(notdir $(MAN3)); do rm -f $(DESTDIR)$(MANDIR)/man3/$$f; done
	for f in $(notdir $(MAN5)); do rm -f $(DESTDIR)$(MANDIR)/man5/$$f; done
	for f in $(notdir $(MAN8)); do rm -f $(DESTDIR)$(MANDIR)/man8/$$f; done
	rm -f $(DESTDIR)$(SYSTEMDDIR)/empath.service $(DESTDIR)$(SYSCONFDIR)/init.d/empath $(DESTDIR)$(SYSCONFDIR)/logrotate.d/empath
	@echo "Kept $(SYSCONFDIR)/empath and $(SPOOLDIR)."

# The assets are every package's binaries, so build them all first.
deb: build
	$(CARGO) deb -p empath-master --no-build

check-etc:
	promtool check rules etc/prometheus-alerts.yml
	promtool test rules etc/prometheus-alerts.test.yml
	sh -n etc/init.d/empath
	python3 -c 'import json,sys; json.load(open(sys.argv[1]))' etc/grafana/empath-dashboard.json
