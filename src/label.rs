//! Closed sets of label values: each a Rust enum with its Prometheus label text and the list of
//! all values (so every series can be registered, at zero, before anything happens).

/// The `group` label's value in a fleet without `groups:`.
pub const DEFAULT_GROUP: &str = "default";

/// Declares a closed set of label values with its string form and the list of all values.
macro_rules! label_enum {
    ($(#[$meta:meta])* $name:ident { $($variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name { $($variant),+ }

        impl $name {
            pub const ALL: &[$name] = &[$($name::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }
        }
    };
}

pub(crate) use label_enum;
