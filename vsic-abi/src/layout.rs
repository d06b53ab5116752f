//! Declared wire layouts.
//!
//! Every fixed-size layout that crosses the device boundary is declared once,
//! with [`wire_layout!`], as a `#[repr(C)]` struct of little-endian integer types
//! (`zerocopy`'s [`U16`], [`U32`], [`U64`]) and byte arrays. The declaration
//! writes every field's offset next to it; the compiler checks those offsets
//! and the total size, and a test (`tests/spec_tables.rs`) checks them
//! against the tables in `docs/device-spec.md`. Converting between a layout
//! and bytes is `zerocopy`'s job: no unsafe code and no hand-written offsets
//! in this crate.
//!
//! The public types of the other modules ([`crate::AdminCommand`],
//! [`crate::records::VsaInfo`], ...) are the decoded, native-endian views;
//! their `encode`/`decode` go through these layouts.

pub use zerocopy::little_endian::{U16, U32, U64};

use crate::wire::{exact, DecodeError};

/// One field of a declared layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Field {
    pub name: &'static str,
    pub offset: usize,
    pub size: usize,
}

/// A declared wire layout (implemented by [`wire_layout!`] only).
pub trait Layout:
    zerocopy::FromBytes + zerocopy::IntoBytes + zerocopy::Immutable + zerocopy::KnownLayout + Sized
{
    /// Size in bytes.
    const LEN: usize = core::mem::size_of::<Self>();
    /// The fields in order, with their offsets and sizes.
    const FIELDS: &'static [Field];

    /// Reads the layout from a buffer of exactly [`Layout::LEN`] bytes.
    fn read_exact(b: &[u8]) -> Result<Self, DecodeError> {
        exact(b, Self::LEN)?;
        Self::read_from_bytes(b).map_err(|_| DecodeError::Truncated {
            need: Self::LEN,
            got: b.len(),
        })
    }
}

/// Declares a wire layout: a `#[repr(C)]`, unaligned, padding-free struct
/// whose fields carry their byte offsets, checked at compile time together
/// with the total size.
///
/// ```text
/// wire_layout! {
///     /// Doc.
///     pub struct Example(16 bytes) {
///         0 => id: U64,
///         8 => count: U32,
///         12 => reserved: U32,
///     }
/// }
/// ```
///
/// Exported so that the device's on-drive layouts are declared the same
/// way (the caller needs `zerocopy` with its `derive` feature).
#[macro_export]
macro_rules! wire_layout {
    (
        $(#[$meta:meta])*
        pub struct $name:ident($len:literal bytes) {
            $( $(#[$fmeta:meta])* $off:literal => $field:ident : $ty:ty, )*
        }
    ) => {
        $(#[$meta])*
        #[derive(
            Debug, Clone, Copy, PartialEq, Eq, Default,
            zerocopy::FromBytes, zerocopy::IntoBytes, zerocopy::Immutable,
            zerocopy::KnownLayout, zerocopy::Unaligned,
        )]
        #[repr(C)]
        pub struct $name {
            $( $(#[$fmeta])* pub $field: $ty, )*
        }

        const _: () = {
            assert!(core::mem::size_of::<$name>() == $len, "layout size differs from its declaration");
            $( assert!(core::mem::offset_of!($name, $field) == $off, "field offset differs from its declaration"); )*
        };

        impl $crate::layout::Layout for $name {
            const FIELDS: &'static [$crate::layout::Field] = &[
                $( $crate::layout::Field {
                    name: stringify!($field),
                    offset: $off,
                    size: core::mem::size_of::<$ty>(),
                }, )*
            ];
        }
    };
}
pub(crate) use wire_layout;

/// Declares a C-like enum of wire codes (`#[repr]` of the given integer
/// type) together with `ALL`, every code in declaration order, and
/// `from_u16`, so that a new code is added in exactly one place.
macro_rules! wire_enum {
    (
        $(#[$meta:meta])*
        pub enum $name:ident: $repr:ident {
            $( $(#[$vmeta:meta])* $variant:ident = $value:literal, )*
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[repr($repr)]
        pub enum $name {
            $( $(#[$vmeta])* $variant = $value, )*
        }

        impl $name {
            /// Every code, in declaration order.
            pub const ALL: [$name; [$(stringify!($variant)),*].len()] = [$($name::$variant),*];

            pub fn from_u16(v: u16) -> Option<$name> {
                Self::ALL.iter().copied().find(|c| *c as u16 == v)
            }
        }
    };
}
pub(crate) use wire_enum;
