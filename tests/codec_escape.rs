//! The codec's escape hatch: values postcard cannot carry (serde's
//! `flatten`, `untagged`) fail with an error that says so and names
//! `Json<T>`, and cross a slave call when wrapped in it.

use processional::{CodecDirection, CodecError, Error, Json, RemoteErrorKind, func, slave};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Common {
    id: u64,
    label: String,
}

/// Serialized as a map of unknown length: postcard refuses to encode it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Event {
    #[serde(flatten)]
    common: Common,
    payload: Vec<u32>,
}

/// Encodes fine; decoding needs to look at the data (`deserialize_any`),
/// which postcard cannot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
enum Answer {
    Count(u64),
    Words(Vec<String>),
}

fn event() -> Event {
    Event {
        common: Common {
            id: 7,
            label: "seven".into(),
        },
        payload: vec![1, 2, 3],
    }
}

#[test]
fn a_flattened_argument_fails_before_leaving_naming_the_way_out() {
    let process = slave().unwrap();
    let error = process
        .invoke_with(event(), func!(|event: Event| event.common.id))
        .expect_err("postcard cannot encode a flattened struct");
    assert!(
        matches!(
            &error,
            Error::Codec {
                direction: CodecDirection::Encode,
                source: CodecError::NotSelfDescribing(_),
                ..
            }
        ),
        "{error:?}"
    );
    let message = error.to_string();
    assert!(message.contains("Event"), "names the type: {message}");
    assert!(message.contains("self-describing"), "says why: {message}");
    assert!(
        message.contains("processional::Json"),
        "names the way out: {message}"
    );
    // The call never left: the slave still serves.
    assert_eq!(process.invoke(func!(|| 5u8)).unwrap(), 5);
}

#[test]
fn an_untagged_value_fails_to_decode_on_either_side_with_the_same_advice() {
    let process = slave().unwrap();
    // As a value: the slave encodes it, this side cannot decode it.
    let error = process
        .invoke(func!(|| Answer::Count(3)))
        .expect_err("postcard cannot decode an untagged enum");
    assert!(
        matches!(
            &error,
            Error::Codec {
                direction: CodecDirection::Decode,
                source: CodecError::NotSelfDescribing(_),
                ..
            }
        ),
        "{error:?}"
    );
    assert!(error.to_string().contains("processional::Json"), "{error}");
    // As an argument: the slave cannot decode it, and says so.
    let error = process
        .invoke_with(
            Answer::Count(3),
            func!(|answer: Answer| answer == Answer::Count(3)),
        )
        .expect_err("the slave cannot decode an untagged enum");
    let Error::Remote(remote) = &error else {
        panic!("expected the slave's codec error, got {error:?}");
    };
    assert_eq!(remote.kind, RemoteErrorKind::Codec, "{error:?}");
    assert!(remote.message.contains("processional::Json"), "{error}");
}

#[test]
fn wrapped_in_json_both_cross_a_slave_call() {
    let process = slave().unwrap();
    let (event, answer) = process
        .invoke_with(
            (
                Json(event()),
                Json(Answer::Words(vec!["a".into(), "b".into()])),
            ),
            func!(
                |(event, answer): (Json<Event>, Json<Answer>)| -> (Json<Event>, Json<Answer>) {
                    let mut event = event.into_inner();
                    event.common.id += 1;
                    event.payload.push(4);
                    let answer = match answer.into_inner() {
                        Answer::Words(words) => Answer::Count(words.len() as u64),
                        count @ Answer::Count(_) => count,
                    };
                    (Json(event), Json(answer))
                }
            ),
        )
        .unwrap();
    let mut expected = self::event();
    expected.common.id = 8;
    expected.payload.push(4);
    assert_eq!(event.0, expected);
    assert_eq!(answer.0, Answer::Count(2));
}
