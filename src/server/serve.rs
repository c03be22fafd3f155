//! How a [`Server`] serves: the services it adds of its own (health, consumer group
//! acknowledgements, reflection), tonic's server under the server's layers, the connections it
//! takes (TLS included), and the shutdown.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic::server::NamedService;
use tonic_health::server::HealthReporter;
use tonic_health::ServingStatus;

use super::accept::Accepting;
use super::builder::Server;
use super::guard::{Guarded, Phase};
use super::layers::deadline::RecordDeadline;
use super::layers::drain::Drain;
use super::layers::messages::WholeMessages;
use super::layers::observe::Observe;
use super::layers::status;
use super::shutdown::{set_status, Shutdown};
use crate::admin::channelz::Channelz;
use crate::admin::channelz_v1::ChannelzService;
use crate::admin::registry::ServerEntry;
use crate::admin::status::AdminStatus;
use crate::admin::v1::AdminService;
use crate::events::{Acknowledgements, Publisher};
use crate::Error;

type Serving = Pin<Box<dyn Future<Output = Result<(), tonic::transport::Error>> + Send>>;

impl Server {
    /// Serves on a listener already bound (for tests: `127.0.0.1:0`) until `signal`
    /// completes, then shuts down gracefully.
    pub async fn serve_with_listener(
        mut self,
        listener: TcpListener,
        signal: impl Future<Output = ()> + Send,
    ) -> Result<(), Error> {
        #[cfg(feature = "tls")]
        let tls = match self.tls.take() {
            Some(tls) => Some(
                tls.rustls()
                    .map_err(|e| Error::invalid_input(format!("TLS configuration: {e}")))?,
            ),
            None => None,
        };
        let registered = ServerEntry::register(listener.local_addr().ok(), Arc::default());
        let reporter = self.add_own_services(&registered)?;
        set_status(
            reporter.as_ref(),
            &self.service_names,
            ServingStatus::Serving,
        )
        .await;

        let local_addr = listener.local_addr().ok();
        let accepting = Accepting::new(listener, self.limits, registered.clone());
        let (phases, _) = watch::channel(Phase::Serving);
        let (stop_serving, stopped) = tokio::sync::oneshot::channel::<()>();
        let stopped = async {
            let _ = stopped.await;
        };
        let mut served = self.service_names.clone();
        let mut descriptors = self.descriptor_sets.clone();
        if self.health {
            served.push("grpc.health.v1.Health");
            descriptors.push(tonic_health::pb::FILE_DESCRIPTOR_SET);
        }
        if self.reflection {
            served.push("grpc.reflection.v1.ServerReflection");
            descriptors.push(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET);
        }
        let drain = Drain::new(self.publishers.iter().flat_map(Publisher::paths).collect());
        let builder = tonic::transport::Server::builder()
            .max_concurrent_streams(self.max_concurrent_streams)
            .http2_max_local_error_reset_streams(Some(self.max_local_error_resets))
            .http2_keepalive_interval(Some(self.keepalive.0))
            .http2_keepalive_timeout(Some(self.keepalive.1));
        // Not with tonic's grace: given one, tonic closes the connection at age + grace
        // without sending GOAWAY at all.
        let builder = match self.max_connection_age {
            Some(age) => builder.max_connection_age(age),
            None => builder,
        };
        let router = builder
            .layer(Observe::new(&served, &descriptors, registered.clone()))
            .layer(status::layer())
            .layer(RecordDeadline)
            .layer(drain.clone())
            .layer(tower::util::option_layer(
                (!self.layers.is_empty()).then(|| self.layers.clone()),
            ))
            .layer(WholeMessages)
            .add_routes(self.routes.routes());
        let plain = |accepting: Accepting, phases: watch::Receiver<Phase>| {
            tokio_stream::StreamExt::map(accepting, move |accepted| {
                Ok::<_, io::Error>(Guarded::new(
                    accepted.connection,
                    accepted.handshake_deadline,
                    phases.clone(),
                ))
            })
        };
        #[cfg(feature = "tls")]
        let serving: Serving = match tls {
            Some(config) => Box::pin(router.serve_with_incoming_shutdown(
                super::tls::TlsAccepting::new(accepting, config, phases.subscribe()),
                stopped,
            )),
            None => Box::pin(
                router.serve_with_incoming_shutdown(plain(accepting, phases.subscribe()), stopped),
            ),
        };
        #[cfg(not(feature = "tls"))]
        let serving: Serving = Box::pin(
            router.serve_with_incoming_shutdown(plain(accepting, phases.subscribe()), stopped),
        );
        let mut serving = serving;
        tracing::info!(addr = ?local_addr, services = ?self.service_names, "serving");

        tokio::pin!(signal);
        tokio::select! {
            result = &mut serving => return result.map_err(Error::transport),
            () = &mut signal => {}
        }
        Shutdown {
            grace_period: self.grace_period,
            publishers: self.publishers,
            drain,
            health: reporter,
            services: self.service_names,
            stop_serving,
            phases,
            addr: local_addr,
        }
        .run(serving.as_mut())
        .await
    }

    /// Adds the services the server serves of its own: health (its reporter is returned),
    /// consumer group acknowledgements when it publishes events, and reflection when asked.
    fn add_own_services(
        &mut self,
        registered: &Arc<ServerEntry>,
    ) -> Result<Option<HealthReporter>, Error> {
        let reporter = if self.health {
            let (reporter, health_service) = tonic_health::server::health_reporter();
            self.routes.add_service(health_service);
            Some(reporter)
        } else {
            None
        };
        if !self.publishers.is_empty() {
            self.service_names
                .push(<crate::v1::EventGroupsService<Acknowledgements> as NamedService>::NAME);
            self.descriptor_sets.push(crate::v1::FILE_DESCRIPTOR_SET);
            self.routes
                .add_service(Acknowledgements::new(self.publishers.clone()).into_service());
        }
        if self.channelz {
            self.service_names
                .push(<ChannelzService<Channelz> as NamedService>::NAME);
            self.descriptor_sets.push(crate::admin::ADMIN_DESCRIPTORS);
            self.routes.add_service(Channelz.into_service());
        }
        if self.admin {
            let name = <AdminService<AdminStatus> as NamedService>::NAME;
            self.service_names.push(name);
            if !self
                .descriptor_sets
                .contains(&crate::admin::ADMIN_DESCRIPTORS)
            {
                self.descriptor_sets.push(crate::admin::ADMIN_DESCRIPTORS);
            }
            let services = self.service_names.iter().map(|s| (*s).to_owned()).collect();
            let admin = AdminStatus::new(registered.clone(), services, self.publishers.clone());
            self.routes.add_service(admin.into_service());
        }
        if self.reflection {
            // List the services served, not every service of the registered files.
            let mut builder = tonic_reflection::server::Builder::configure()
                .with_service_name("grpc.reflection.v1.ServerReflection");
            for name in &self.service_names {
                builder = builder.with_service_name(*name);
            }
            if self.health {
                builder = builder
                    .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
                    .with_service_name("grpc.health.v1.Health");
            }
            for set in &self.descriptor_sets {
                builder = builder.register_encoded_file_descriptor_set(set);
            }
            let reflection = builder
                .build_v1()
                .map_err(|e| Error::unsupported(format!("building the reflection service: {e}")))?;
            self.routes.add_service(reflection);
        }
        Ok(reporter)
    }
}
