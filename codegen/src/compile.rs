//! Parsing `.proto` files with protox, with `meshless/v1/meshless.proto` always importable.

use std::collections::HashMap;
use std::path::PathBuf;

use prost::Message as _;
use prost_reflect::DescriptorPool;
use prost_types::FileDescriptorSet;
use protox::file::{
    ChainFileResolver, File, FileResolver, GoogleFileResolver, IncludeFileResolver,
};

use crate::{Error, MESHLESS_PROTO, MESHLESS_PROTO_NAME};

/// The result of parsing: descriptors for validation and for both code generators.
pub(crate) struct Compiled {
    /// Everything parsed, imports included, with custom options intact.
    pub(crate) pool: DescriptorPool,
    /// The files to generate Rust code for: the requested files and what they import.
    pub(crate) to_generate: FileDescriptorSet,
    /// Every file, encoded, for gRPC server reflection.
    pub(crate) encoded_for_reflection: Vec<u8>,
    /// Where each file was read from, by its import name, to point errors at real paths.
    pub(crate) paths: HashMap<String, PathBuf>,
    /// The text of each file, by its import name, read once for error messages.
    sources: HashMap<String, String>,
}

/// Serves `meshless/v1/meshless.proto` from the copy compiled into this crate.
struct MeshlessFileResolver;

impl FileResolver for MeshlessFileResolver {
    fn open_file(&self, name: &str) -> Result<File, protox::Error> {
        if name == MESHLESS_PROTO_NAME {
            File::from_source(name, MESHLESS_PROTO)
        } else {
            Err(protox::Error::file_not_found(name))
        }
    }
}

pub(crate) fn compile(protos: &[PathBuf], includes: &[PathBuf]) -> Result<Compiled, Error> {
    let mut resolver = ChainFileResolver::new();
    for include in includes {
        resolver.add(IncludeFileResolver::new(include.clone()));
    }
    resolver.add(MeshlessFileResolver);
    resolver.add(GoogleFileResolver::new());

    let mut compiler = protox::Compiler::with_file_resolver(resolver);
    compiler.include_imports(true).include_source_info(true);
    for proto in protos {
        compiler.open_file(proto).map_err(Error::from_protox)?;
    }

    let paths = compiler
        .files()
        .filter_map(|file| Some((file.name().to_owned(), file.path()?.to_owned())))
        .collect();
    let mut sources: HashMap<String, String> = compiler
        .files()
        .filter_map(|file| {
            Some((
                file.name().to_owned(),
                std::fs::read_to_string(file.path()?).ok()?,
            ))
        })
        .collect();
    sources
        .entry(MESHLESS_PROTO_NAME.to_owned())
        .or_insert_with(|| MESHLESS_PROTO.to_owned());
    let pool = compiler.descriptor_pool();
    let everything = compiler.file_descriptor_set();

    // prost-build needs every file, imports included, to decide what its types can derive;
    // it generates nothing for types mapped to existing Rust types (`extern_path`), which is
    // how `google/protobuf/*` and `meshless/v1/meshless.proto` are left out.
    let to_generate = everything.clone();

    let mut for_reflection = everything;
    for file in &mut for_reflection.file {
        if file.name().starts_with("google/protobuf/") {
            // Well-known files are large; reflection clients need their types, not their docs.
            file.source_code_info = None;
        }
    }

    Ok(Compiled {
        pool,
        to_generate,
        encoded_for_reflection: for_reflection.encode_to_vec(),
        paths,
        sources,
    })
}

/// `file:line:col` of the element at `path` in a file's source, as editors and compilers print it.
pub(crate) fn place(
    compiled: &Compiled,
    file: &prost_reflect::FileDescriptor,
    path: &[i32],
) -> String {
    let name = file.name();
    let shown = compiled
        .paths
        .get(name)
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| name.to_owned());
    let span = file
        .file_descriptor_proto()
        .source_code_info
        .as_ref()
        .and_then(|info| info.location.iter().find(|loc| loc.path == path))
        .map(|loc| loc.span.clone());
    match span.as_deref() {
        Some([line, col, ..]) => format!("{shown}:{}:{}", line + 1, col + 1),
        _ => shown,
    }
}

/// The source text of the element at `path`, when the file's source can be read.
pub(crate) fn source_text(
    compiled: &Compiled,
    file: &prost_reflect::FileDescriptor,
    path: &[i32],
) -> Option<String> {
    let location = file
        .file_descriptor_proto()
        .source_code_info
        .as_ref()?
        .location
        .iter()
        .find(|loc| loc.path == path)?;
    let source = compiled.sources.get(file.name())?;
    let (start_line, start_col, end_line, end_col) = match location.span[..] {
        [l, c, ec] => (l, c, l, ec),
        [l, c, el, ec] => (l, c, el, ec),
        _ => return None,
    };
    let lines: Vec<&str> = source.lines().collect();
    if start_line != end_line {
        return None;
    }
    let line = lines.get(usize::try_from(start_line).ok()?)?;
    line.get(usize::try_from(start_col).ok()?..usize::try_from(end_col).ok()?)
        .map(str::to_owned)
}
