//! smtp-out's control socket: the DNS cache commands (`empathctl dns ...`)
//! and `empathctl tls policy DOMAIN`, which the master forwards here.

use std::io;
use std::sync::Arc;

use empath_common::control::{
    ControlRequest, ControlResponse, DnsCacheEntry, DnsCommand, TlsCommand,
};
use empath_common::ipc::{read_frame, write_frame};
use tokio::net::UnixStream;

use crate::SmtpOut;
use crate::dns::Answer;

pub async fn serve(agent: Arc<SmtpOut>, mut stream: UnixStream) -> io::Result<()> {
    while let Some(request) = read_frame::<_, ControlRequest>(&mut stream).await? {
        let response = match request {
            ControlRequest::Dns(command) => dns(&agent, command).await,
            ControlRequest::Tls(TlsCommand::Policy { domain }) => {
                ControlResponse::TlsPolicy(Box::new(agent.tls_policy_view(&domain).await))
            }
            other => ControlResponse::Error(format!("smtp-out does not handle {other:?}")),
        };
        write_frame(&mut stream, &response).await?;
    }
    Ok(())
}

async fn dns(agent: &SmtpOut, command: DnsCommand) -> ControlResponse {
    tracing::info!(?command, "DNS control command");
    let port = agent.config.delivery.smtp_port;
    match command {
        DnsCommand::ListCache => ControlResponse::DnsCache(
            agent
                .resolver
                .cached()
                .into_iter()
                .map(|(domain, answer, ttl)| entry(domain, &answer, ttl.as_secs(), port))
                .collect(),
        ),
        DnsCommand::ClearCache => {
            let cleared = agent.resolver.clear_cache();
            ControlResponse::Done(format!("cleared {cleared} cached DNS entries"))
        }
        DnsCommand::Refresh { domain } => match agent.resolver.refresh(&domain).await {
            Ok(answer) => ControlResponse::Done(describe(&domain, &answer)),
            Err(error) => ControlResponse::Error(format!("{domain}: {error:?}")),
        },
        DnsCommand::ListOverrides => {
            ControlResponse::Overrides(agent.config.delivery.mx_overrides())
        }
    }
}

fn entry(domain: String, answer: &Answer, ttl_remaining_secs: u64, port: u16) -> DnsCacheEntry {
    let hosts = match answer {
        Answer::NullMx => Vec::new(),
        Answer::Hosts(hosts) => hosts
            .iter()
            .map(|host| (host.name.clone(), port, host.preference))
            .collect(),
    };
    DnsCacheEntry {
        domain,
        hosts,
        ttl_remaining_secs,
    }
}

fn describe(domain: &str, answer: &Answer) -> String {
    match answer {
        Answer::NullMx => format!("{domain}: null MX (accepts no mail)"),
        Answer::Hosts(hosts) => {
            let list: Vec<String> = hosts
                .iter()
                .map(|h| format!("{} (preference {})", h.name, h.preference))
                .collect();
            format!("{domain}: {}", list.join(", "))
        }
    }
}
