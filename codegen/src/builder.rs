//! The build-script API, shaped like tonic-build's: [`compile_protos`] for the common case,
//! [`configure`] for settings.

use std::path::{Path, PathBuf};
use std::rc::Rc;

use crate::compile::{compile, Compiled};
use crate::generator::{DescriptorSetPath, Generator};
use crate::validate::validate;
use crate::Error;

/// Compiles one `.proto` file, with its folder as the include path, into Rust code in
/// `OUT_DIR`, ready for `meshless::include_proto!("package.name")`.
///
/// ```no_run
/// // build.rs
/// fn main() -> Result<(), Box<dyn std::error::Error>> {
///     meshless_build::compile_protos("proto/signup/v1/users.proto")?;
///     Ok(())
/// }
/// ```
///
/// Note that the folder of the file becomes the include path: a file that imports others by
/// a path relative to another folder needs [`configure`] and
/// [`Builder::compile_protos`] with that folder as an include.
pub fn compile_protos(proto: impl AsRef<Path>) -> Result<(), Error> {
    let proto = proto.as_ref();
    let include = proto
        .parent()
        .filter(|parent| !parent.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    configure().compile_protos(&[proto], &[include])
}

/// Starts a [`Builder`] with the default settings.
pub fn configure() -> Builder {
    Builder {
        out_dir: None,
        build_client: true,
        build_server: true,
        emit_rerun_if_changed: true,
        include_file: DEFAULT_INCLUDE_FILE.to_owned(),
        extern_paths: Vec::new(),
        type_attributes: Vec::new(),
        field_attributes: Vec::new(),
        bytes: Vec::new(),
        generate_meshless_proto: false,
    }
}

/// The name of the file, in the output folder, that includes every generated package in a
/// module tree mirroring the packages; `meshless::include_protos!()` includes it.
pub const DEFAULT_INCLUDE_FILE: &str = "_meshless_includes.rs";

/// Settings for code generation; start with [`configure`].
#[derive(Debug, Clone)]
#[must_use]
pub struct Builder {
    out_dir: Option<PathBuf>,
    build_client: bool,
    build_server: bool,
    emit_rerun_if_changed: bool,
    include_file: String,
    extern_paths: Vec<(String, String)>,
    type_attributes: Vec<(String, String)>,
    field_attributes: Vec<(String, String)>,
    bytes: Vec<String>,
    generate_meshless_proto: bool,
}

impl Builder {
    /// Where to write the generated files. Default: the `OUT_DIR` that Cargo gives build
    /// scripts (which `meshless::include_proto!` reads from).
    pub fn out_dir(mut self, out_dir: impl AsRef<Path>) -> Self {
        self.out_dir = Some(out_dir.as_ref().to_owned());
        self
    }

    /// Whether to generate clients (`{Service}Client`). Default: `true`.
    pub fn build_client(mut self, enable: bool) -> Self {
        self.build_client = enable;
        self
    }

    /// Whether to generate the producer side (`{Service}Handler`, `{Service}Service`).
    /// Default: `true`.
    pub fn build_server(mut self, enable: bool) -> Self {
        self.build_server = enable;
        self
    }

    /// Whether to print `cargo:rerun-if-changed` for every `.proto` file read, so that Cargo
    /// reruns the build script when one changes. Default: `true`.
    pub fn emit_rerun_if_changed(mut self, enable: bool) -> Self {
        self.emit_rerun_if_changed = enable;
        self
    }

    /// The name of the file that includes every generated package (default:
    /// [`DEFAULT_INCLUDE_FILE`]).
    pub fn include_file(mut self, name: impl Into<String>) -> Self {
        self.include_file = name.into();
        self
    }

    /// Uses existing Rust types for a protobuf package or type, as prost-build's
    /// `extern_path`: `.extern_path(".common.v1", "::common::v1")`.
    pub fn extern_path(
        mut self,
        proto_path: impl Into<String>,
        rust_path: impl Into<String>,
    ) -> Self {
        self.extern_paths
            .push((proto_path.into(), rust_path.into()));
        self
    }

    /// Adds an attribute to the generated messages and enums matching `path`, as
    /// prost-build's `type_attribute`: `.type_attribute(".", "#[derive(serde::Serialize)]")`.
    pub fn type_attribute(mut self, path: impl Into<String>, attribute: impl Into<String>) -> Self {
        self.type_attributes.push((path.into(), attribute.into()));
        self
    }

    /// Adds an attribute to the generated message fields matching `path`, as prost-build's
    /// `field_attribute`.
    pub fn field_attribute(
        mut self,
        path: impl Into<String>,
        attribute: impl Into<String>,
    ) -> Self {
        self.field_attributes.push((path.into(), attribute.into()));
        self
    }

    /// Generates `bytes::Bytes` instead of `Vec<u8>` for the `bytes` fields matching `path`
    /// (`"."` for all), as prost-build's `bytes`.
    pub fn bytes(mut self, path: impl Into<String>) -> Self {
        self.bytes.push(path.into());
        self
    }

    /// Generates `meshless/v1/meshless.proto` itself. Only the `meshless` crate does this;
    /// everyone else uses its types through `meshless::v1`.
    #[doc(hidden)]
    pub fn generate_meshless_proto(mut self, enable: bool) -> Self {
        self.generate_meshless_proto = enable;
        self
    }

    /// Compiles `protos`, looking imports up in `includes` (and in the built-in
    /// `meshless/v1/meshless.proto` and `google/protobuf/*.proto`), and writes the Rust code.
    ///
    /// Errors name the file, line and column, and say what to change.
    pub fn compile_protos<P: AsRef<Path>>(self, protos: &[P], includes: &[P]) -> Result<(), Error> {
        let protos: Vec<PathBuf> = protos.iter().map(|p| p.as_ref().to_owned()).collect();
        let includes: Vec<PathBuf> = includes.iter().map(|p| p.as_ref().to_owned()).collect();
        if protos.is_empty() {
            return Err(Error::new(
                crate::ErrorKind::NotFound,
                "no .proto file given: pass at least one path to compile_protos",
            ));
        }
        let compiled = compile(&protos, &includes)?;
        if self.emit_rerun_if_changed {
            for path in compiled.paths.values() {
                println!("cargo:rerun-if-changed={}", path.display());
            }
        }
        validate(&compiled)?;
        self.generate(compiled)
    }

    fn generate(self, compiled: Compiled) -> Result<(), Error> {
        let descriptor_file = match self.include_file.strip_suffix(".rs") {
            Some(stem) => format!("{stem}.descriptors.bin"),
            None => format!("{}.descriptors.bin", self.include_file),
        };
        let descriptor_set = match self.out_dir {
            Some(_) => DescriptorSetPath::BesideCode(descriptor_file.clone()),
            None => DescriptorSetPath::InOutDir(descriptor_file.clone()),
        };
        let out_dir = match self.out_dir {
            Some(dir) => dir,
            None => std::env::var_os("OUT_DIR")
                .map(PathBuf::from)
                .ok_or_else(|| {
                    Error::new(
                        crate::ErrorKind::Io,
                        "OUT_DIR is not set: call meshless-build from a build script, or set \
                     Builder::out_dir",
                    )
                })?,
        };
        std::fs::create_dir_all(&out_dir)
            .map_err(|e| Error::io(format_args!("creating {}", out_dir.display()), e))?;
        // Servers serve it by reflection; observers check their filters against it.
        if self.build_server || self.build_client {
            let path = out_dir.join(&descriptor_file);
            write_if_changed(&path, &compiled.encoded_for_reflection)
                .map_err(|e| Error::io(format_args!("writing {}", path.display()), e))?;
        }

        let mut to_generate = compiled.to_generate.clone();
        if !self.generate_meshless_proto {
            // Its messages are left out through `extern_path`, but prost-build would still
            // hand its services to the service generator, writing a second `meshless.v1.rs`.
            for file in &mut to_generate.file {
                if file.package() == MESHLESS_PACKAGE {
                    file.service.clear();
                }
            }
        }
        let tonic = tonic_prost_build::configure()
            .build_client(self.build_client)
            .build_server(self.build_server)
            .build_transport(false)
            .codec_path("::meshless::codegen::tonic_prost::ProstCodec")
            .service_generator();

        let mut config = prost_build::Config::new();
        config
            .out_dir(&out_dir)
            .prost_path("::meshless::codegen::prost")
            .prost_types_path("::meshless::codegen::prost_types")
            .include_file(&self.include_file)
            .service_generator(Box::new(Generator::new(
                tonic,
                Rc::new(compiled),
                self.build_client,
                self.build_server,
                descriptor_set,
            )));
        if !self.generate_meshless_proto {
            config.extern_path(format!(".{}", MESHLESS_PACKAGE), "::meshless::v1");
        }
        for (proto, rust) in &self.extern_paths {
            config.extern_path(proto, rust);
        }
        for (path, attribute) in &self.type_attributes {
            config.type_attribute(path, attribute);
        }
        for (path, attribute) in &self.field_attributes {
            config.field_attribute(path, attribute);
        }
        if !self.bytes.is_empty() {
            config.bytes(&self.bytes);
        }
        config.compile_fds(to_generate).map_err(|e| {
            Error::io(
                format_args!("writing generated code to {}", out_dir.display()),
                e,
            )
        })
    }
}

const MESHLESS_PACKAGE: &str = "meshless.v1";

/// Writes `bytes` to `path` unless it holds them already, so that an unchanged build does not
/// make cargo rebuild what includes the file.
fn write_if_changed(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    if std::fs::read(path).is_ok_and(|old| old == bytes) {
        return Ok(());
    }
    std::fs::write(path, bytes)
}
