//! One job's deliveries: each recipient is resolved the way Postfix's
//! local(8) does it, and delivered.
//!
//! For an address at a local domain: a `Delivered-To:` header naming it
//! already is a mail forwarding loop (5.4.6); otherwise its alias applies,
//! else the user's `~/.forward`, else the user's mailbox. An alias or
//! `.forward` that lists its own name delivers that name to the mailbox
//! (Postfix's self-reference rule); deeper nesting than [`MAX_LEVEL`] is
//! an alias loop (5.4.6). Addresses elsewhere are forwarded through
//! cleanup.
//!
//! Duplicates are delivered once per job: the same address at the same
//! nesting level, the same mailbox, file, command or `:include:` file.
//! Unlike Postfix, a duplicate shares the first one's outcome (not a
//! plain success), so a deferred delivery defers every recipient that led
//! to it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use empath_common::aliases::{Found, Target, parse_targets};
use empath_common::config::TargetSource;
use empath_common::local_recipients::{ROOT_FALLBACKS, local_part, system_user};
use empath_common::protocol::Outcome;

use crate::agent::Agent;
use crate::command;
use crate::helper::{self, Request};
use crate::identity::Identity;
use crate::mbox::Mbox;
use crate::message::Message;
use crate::status::{DeliveryError, Status};

/// How deep aliases may nest before it counts as a loop (Postfix's
/// limit).
pub const MAX_LEVEL: usize = 100;

/// Where a list of targets came from, and with whose rights its commands
/// and files run.
#[derive(Debug, Clone)]
struct Branch {
    /// The local part whose alias or `.forward` lists the targets.
    exp_from: String,
    privs: Identity,
    source: TargetSource,
    /// The address the targets are delivered for (`Delivered-To:`).
    delivered_to: String,
    level: usize,
}

/// A remote address to forward to, and the recipients that led to it.
struct Forward {
    address: String,
    delivered_to: String,
    contributors: BTreeSet<usize>,
}

pub struct Job<'a> {
    agent: &'a Agent,
    message: &'a Message,
    memo: HashMap<String, Status>,
    /// The job recipient being resolved: its index and address.
    current: (usize, String),
    forwards: BTreeMap<String, Forward>,
}

impl<'a> Job<'a> {
    pub fn new(agent: &'a Agent, message: &'a Message) -> Self {
        Self {
            agent,
            message,
            memo: HashMap::new(),
            current: (0, String::new()),
            forwards: BTreeMap::new(),
        }
    }

    /// Delivers to recipient `index`, `address`.
    pub fn recipient(&mut self, index: usize, address: &str) -> Status {
        let address = self.agent.domains().qualify(address);
        self.current = (index, address.clone());
        self.address(&address, 0, None, None)
    }

    fn address(
        &mut self,
        address: &str,
        level: usize,
        exp_from: Option<&str>,
        listed_for: Option<&str>,
    ) -> Status {
        let address = self.agent.domains().qualify(address);
        if !self.agent.domains().is_local_address(&address) {
            return self.forward(&address, listed_for.unwrap_or(&address));
        }
        let key = format!("recipient {level} {}", address.to_lowercase());
        if let Some(status) = self.memo.get(&key) {
            return status.clone();
        }
        let status = self.resolve(&address, level, exp_from);
        self.memo.insert(key, status.clone());
        status
    }

    fn resolve(&mut self, address: &str, level: usize, exp_from: Option<&str>) -> Status {
        if level > MAX_LEVEL {
            return Status::failed("5.4.6", format!("alias database loop for {address}"));
        }
        if self.message.was_delivered_to(address) {
            return Status::failed("5.4.6", format!("mail forwarding loop for {address}"));
        }
        let local = local_part(address);
        if exp_from != Some(local.as_str()) {
            match self.agent.recipients.aliases().lookup(&local) {
                Err(error) => return Status::deferred("4.3.0", error.to_string()),
                Ok(Some(found)) => return self.alias(address, &local, &found, level),
                Ok(None) => {}
            }
        }
        let user = match system_user(&local) {
            Some(user) => user,
            None if ROOT_FALLBACKS.contains(&local.as_str()) => match system_user("root") {
                Some(root) => root,
                None => return Status::deferred("4.3.0", "no user root to deliver to"),
            },
            None => return Status::failed("5.1.1", format!("unknown user: \"{local}\"")),
        };
        let identity = Identity::of_user(&user);
        let settings = &self.agent.config.local_delivery;
        let forward_allowed =
            settings.forward && (!identity.is_root() || settings.allow_root_forward);
        if forward_allowed && exp_from != Some(local.as_str()) {
            match self.read_forward(&identity) {
                Err(status) => return status,
                Ok(Some(targets)) => {
                    let branch = Branch {
                        exp_from: local,
                        privs: identity,
                        source: TargetSource::Forward,
                        delivered_to: address.to_owned(),
                        level: level + 1,
                    };
                    return self.targets(&targets, &branch);
                }
                Ok(None) => {}
            }
        }
        self.mailbox(&identity, address)
    }

    fn alias(&mut self, address: &str, local: &str, found: &Found, level: usize) -> Status {
        let targets = match parse_targets(&found.value) {
            Ok(targets) => targets,
            Err(error) => {
                return Status::deferred(
                    "4.3.0",
                    format!(
                        "alias {local:?} in {} cannot be used: {error}",
                        found.source.display()
                    ),
                );
            }
        };
        // Commands and files of an alias file run as its owner, or as
        // default_privs when root owns it.
        let privs = if found.owner == 0 {
            self.agent.default_privs.clone()
        } else {
            Identity::of_uid(found.owner).unwrap_or_else(|| self.agent.default_privs.clone())
        };
        let branch = Branch {
            exp_from: local.to_owned(),
            privs,
            source: TargetSource::Alias,
            delivered_to: address.to_owned(),
            level: level + 1,
        };
        self.targets(&targets, &branch)
    }

    fn targets(&mut self, targets: &[Target], branch: &Branch) -> Status {
        let statuses: Vec<Status> = targets.iter().map(|t| self.target(t, branch)).collect();
        Status::worst(statuses).unwrap_or_else(|| Status::delivered("nothing to deliver"))
    }

    fn target(&mut self, target: &Target, branch: &Branch) -> Status {
        match target {
            Target::Address(address) => self.address(
                address,
                branch.level,
                Some(&branch.exp_from),
                Some(&branch.delivered_to),
            ),
            Target::Mailbox(user) => {
                let Some(user) = system_user(&user.to_lowercase()) else {
                    return Status::failed("5.1.1", format!("unknown user: \"{user}\""));
                };
                let address = self.agent.domains().qualify(&user.name);
                self.mailbox(&Identity::of_user(&user), &address)
            }
            Target::Command(command) => {
                if !self.allowed(
                    &self.agent.config.local_delivery.allow_mail_to_commands,
                    branch,
                ) {
                    return Status::failed("5.7.1", "mail to command is restricted");
                }
                let identity = self.run_as(&branch.privs);
                let key = format!("command {} {command}", identity.uid);
                self.once(key, |job| job.command(command, &identity, branch))
            }
            Target::File(path) => {
                if !self.allowed(
                    &self.agent.config.local_delivery.allow_mail_to_files,
                    branch,
                ) {
                    return Status::failed("5.7.1", "mail to file is restricted");
                }
                let identity = self.run_as(&branch.privs);
                let key = format!("file {} {}", identity.uid, path.display());
                self.once(key, |job| job.file(path, &identity, branch))
            }
            Target::Include(path) => {
                let key = format!("include {}", path.display());
                self.once(key, |job| job.include(path, branch))
            }
        }
    }

    /// Runs `deliver` unless `key` was delivered in this job already; then
    /// its outcome is shared.
    fn once(&mut self, key: String, deliver: impl FnOnce(&mut Self) -> Status) -> Status {
        if let Some(status) = self.memo.get(&key) {
            return status.clone();
        }
        let status = deliver(self);
        self.memo.insert(key, status.clone());
        status
    }

    fn allowed(&self, sources: &[TargetSource], branch: &Branch) -> bool {
        sources.contains(&branch.source)
    }

    /// Commands and files never run as root.
    fn run_as(&self, privs: &Identity) -> Identity {
        if privs.is_root() {
            self.agent.default_privs.clone()
        } else {
            privs.clone()
        }
    }

    fn read_forward(&self, user: &Identity) -> Result<Option<Vec<Target>>, Status> {
        let path = user.home.join(".forward");
        let Some((content, owner)) = self.read_list(user, &path)? else {
            return Ok(None);
        };
        if owner != user.uid && owner != 0 {
            tracing::warn!(file = %path.display(), owner, "ignoring a .forward file that its user does not own");
            return Ok(None);
        }
        let text = list_text(&content);
        if text.trim().is_empty() {
            return Ok(None);
        }
        parse_targets(&text).map(Some).map_err(|error| {
            Status::deferred(
                "4.3.0",
                format!("{} cannot be used: {error}", path.display()),
            )
        })
    }

    /// Reads a `.forward` or `:include:` file as `identity`.
    fn read_list(
        &self,
        identity: &Identity,
        path: &Path,
    ) -> Result<Option<(Vec<u8>, u32)>, Status> {
        match self.agent.helper.run(
            identity,
            &Request::ReadFile {
                path: path.to_owned(),
            },
            &[],
        ) {
            Ok(helper::Reply::File(file)) => Ok(file),
            Ok(other) => Err(Status::deferred(
                "4.3.0",
                format!("unexpected answer from the delivery helper: {other:?}"),
            )),
            Err(error) => Err(Status::deferred(
                "4.3.0",
                format!("cannot read {}: {error}", path.display()),
            )),
        }
    }

    fn include(&mut self, path: &Path, branch: &Branch) -> Status {
        let reader = self.run_as(&branch.privs);
        let (content, owner) = match self.read_list(&reader, path) {
            Err(status) => return status,
            Ok(None) => {
                return Status::deferred(
                    "4.3.0",
                    format!(":include: file {} does not exist", path.display()),
                );
            }
            Ok(Some(file)) => file,
        };
        let targets = match parse_targets(&list_text(&content)) {
            Ok(targets) => targets,
            Err(error) => {
                return Status::deferred(
                    "4.3.0",
                    format!(":include: file {} cannot be used: {error}", path.display()),
                );
            }
        };
        // Commands and files listed in it run as its owner, unless root.
        let privs = if owner == 0 {
            branch.privs.clone()
        } else {
            Identity::of_uid(owner).unwrap_or_else(|| branch.privs.clone())
        };
        let inner = Branch {
            privs,
            source: TargetSource::Include,
            level: branch.level + 1,
            ..branch.clone()
        };
        self.targets(&targets, &inner)
    }

    fn command(&mut self, command: &str, identity: &Identity, branch: &Branch) -> Status {
        let (local, domain) = branch
            .delivered_to
            .rsplit_once('@')
            .unwrap_or((&branch.delivered_to, ""));
        let env = [
            ("HOME", identity.home.display().to_string()),
            ("USER", identity.name.clone()),
            ("LOGNAME", identity.name.clone()),
            ("SHELL", identity.shell.display().to_string()),
            ("PATH", "/usr/bin:/bin".to_owned()),
            ("SENDER", self.message.sender.clone()),
            ("RECIPIENT", branch.delivered_to.clone()),
            ("ORIGINAL_RECIPIENT", self.current.1.clone()),
            ("LOCAL", local.to_owned()),
            ("DOMAIN", domain.to_owned()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        let run = command::Run {
            command,
            identity,
            switch: self.agent.privileged,
            env,
            time_limit: Duration::from_secs(
                self.agent.config.local_delivery.command_time_limit_secs,
            ),
        };
        run.deliver(&self.message.mbox(&branch.delivered_to))
    }

    fn file(&mut self, path: &Path, identity: &Identity, branch: &Branch) -> Status {
        let settings = &self.agent.config.local_delivery;
        let request = if path.as_os_str().to_string_lossy().ends_with('/') {
            Request::Maildir {
                dir: path.to_owned(),
                hostname: self.agent.hostname.clone(),
            }
        } else {
            Request::AppendMbox {
                path: path.to_owned(),
                size_limit: settings.mailbox_size_limit,
                lock_timeout_secs: settings.lock_timeout_secs,
            }
        };
        let input = match request {
            Request::Maildir { .. } => self.message.maildir(&branch.delivered_to),
            _ => self.message.mbox(&branch.delivered_to),
        };
        self.helper(identity, &request, &input)
    }

    fn helper(&self, identity: &Identity, request: &Request, input: &[Vec<u8>]) -> Status {
        match self.agent.helper.run(identity, request, input) {
            Ok(helper::Reply::Delivered { detail }) => Status::delivered(detail),
            Ok(helper::Reply::Failed(error)) | Err(error) => error.status(),
            Ok(other) => Status::deferred(
                "4.3.0",
                format!("unexpected answer from the delivery helper: {other:?}"),
            ),
        }
    }

    /// The user's mailbox: where `local_delivery` says, in mbox or
    /// Maildir format.
    fn mailbox(&mut self, user: &Identity, address: &str) -> Status {
        let key = format!("mailbox {}", user.name);
        self.once(key, |job| job.deliver_mailbox(user, address))
    }

    fn deliver_mailbox(&self, user: &Identity, address: &str) -> Status {
        let settings = &self.agent.config.local_delivery;
        let maildir = settings.maildir();
        let spool = match &settings.mailbox_directory {
            Some(dir) => Some(dir.clone()),
            None if settings.home_mailbox.is_empty() => Some(settings.mail_spool_directory.clone()),
            None => None,
        };
        let Some(spool) = spool else {
            let path = user.home.join(&settings.home_mailbox);
            let request = if maildir {
                Request::Maildir {
                    dir: path,
                    hostname: self.agent.hostname.clone(),
                }
            } else {
                Request::AppendMbox {
                    path,
                    size_limit: settings.mailbox_size_limit,
                    lock_timeout_secs: settings.lock_timeout_secs,
                }
            };
            let input = if maildir {
                self.message.maildir(address)
            } else {
                self.message.mbox(address)
            };
            return self.helper(user, &request, &input);
        };
        // mailbox_directory is made on first use (the dev set-up starts
        // with no ./var/mail); the system's spool directory never is.
        if settings.mailbox_directory.is_some()
            && let Err(error) = std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(&spool)
        {
            return DeliveryError::io(&spool, &error).status();
        }
        let path = spool.join(&user.name);
        if maildir {
            if let Err(error) = self.user_directory(&path, user) {
                return error.status();
            }
            let request = Request::Maildir {
                dir: path,
                hostname: self.agent.hostname.clone(),
            };
            return self.helper(user, &request, &self.message.maildir(address));
        }
        // An mbox in a spool directory the users cannot write: the agent
        // creates, locks and writes it itself (as Postfix's local(8) does
        // with root privileges), never through a link, and only a file
        // that belongs to the user.
        let privileged = self.agent.privileged;
        let owner = if privileged {
            user.uid
        } else {
            self.agent.me.uid
        };
        let mbox = Mbox {
            path: &path,
            create_owner: privileged.then_some((user.uid, user.gid)),
            required_owner: Some(owner),
            size_limit: settings.mailbox_size_limit,
            lock_timeout: Duration::from_secs(settings.lock_timeout_secs),
        };
        match mbox.append(&self.message.mbox(address)) {
            Ok(()) => Status::delivered(format!("delivered to mailbox {}", path.display())),
            Err(error) => error.status(),
        }
    }

    /// `DIR/USER/` for a Maildir under `mailbox_directory`: created for the
    /// user (by a root agent), and it must be theirs.
    fn user_directory(&self, path: &PathBuf, user: &Identity) -> Result<(), DeliveryError> {
        let owner = if self.agent.privileged {
            user.uid
        } else {
            self.agent.me.uid
        };
        match std::fs::DirBuilder::new().mode(0o700).create(path) {
            Ok(()) if self.agent.privileged => {
                std::os::unix::fs::chown(path, Some(user.uid), Some(user.gid))
                    .map_err(|e| DeliveryError::io(path, &e))?;
            }
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(DeliveryError::io(path, &e)),
        }
        let meta = std::fs::symlink_metadata(path).map_err(|e| DeliveryError::io(path, &e))?;
        if !meta.is_dir() || meta.uid() != owner {
            return Err(DeliveryError::Unsafe {
                path: path.display().to_string(),
                detail: format!("not a directory owned by uid {owner}"),
            });
        }
        Ok(())
    }

    fn forward(&mut self, address: &str, delivered_to: &str) -> Status {
        let index = self.current.0;
        self.forwards
            .entry(address.to_lowercase())
            .or_insert_with(|| Forward {
                address: address.to_owned(),
                delivered_to: delivered_to.to_owned(),
                contributors: BTreeSet::new(),
            })
            .contributors
            .insert(index);
        Status::delivered(format!("forwarded to {address}"))
    }

    /// Queues the forwarded copies (one message per `Delivered-To:`
    /// address) and folds their outcome into the statuses of the
    /// recipients that led to them.
    pub fn send_forwards(
        &mut self,
        runtime: &tokio::runtime::Handle,
        statuses: &mut BTreeMap<usize, Status>,
    ) {
        let mut groups: BTreeMap<String, Vec<&Forward>> = BTreeMap::new();
        for forward in self.forwards.values() {
            groups
                .entry(forward.delivered_to.clone())
                .or_default()
                .push(forward);
        }
        let socket = self.agent.cleanup_socket.clone();
        for (delivered_to, forwards) in groups {
            let recipients: Vec<String> = forwards.iter().map(|f| f.address.clone()).collect();
            let content = self.message.forwarded(&delivered_to);
            let result = runtime.block_on(crate::forward::submit(
                &socket,
                &self.message.sender,
                &recipients,
                &content,
            ));
            let outcome = match &result {
                Ok(id) => {
                    tracing::info!(delivered_to = %delivered_to, recipients = ?recipients, queued_as = %id, "forwarded");
                    Status::delivered(format!("forwarded as {id}"))
                }
                Err(error) => Status::deferred("4.3.0", format!("cannot forward: {error}")),
            };
            for forward in forwards {
                for index in &forward.contributors {
                    if let Some(status) = statuses.get_mut(index) {
                        let combined = Status::worst([status.clone(), outcome.clone()]);
                        if let Some(combined) = combined
                            && (combined.outcome != Outcome::Delivered
                                || status.reply.text.starts_with("forwarded to"))
                        {
                            *status = combined;
                        }
                    }
                }
            }
        }
    }
}

/// A `.forward` or `:include:` file without its comment lines.
fn list_text(content: &[u8]) -> String {
    String::from_utf8_lossy(content)
        .lines()
        .filter(|line| !line.trim_start().starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n")
}
