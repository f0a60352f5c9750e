//! A conversation longer than the context: the newest turns that fit, as chat apps keep them.

use super::EngineError;
use crate::Result;
use crate::tokenizer::ChatMessage;

/// The part of a conversation the model gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FittedConversation {
    /// The system messages and the newest turns.
    pub messages: Vec<ChatMessage>,
    /// `messages` through the chat template.
    pub tokens: Vec<u32>,
    /// Messages left out after the system messages.
    pub dropped: usize,
}

/// The newest turns of `messages` whose tokens leave `reply_room` positions of `n_ctx` for the
/// reply: the oldest turns (a user message and the replies up to the next user message) are
/// left out first; system messages stay. `encode` applies the chat template. Fails with
/// [`EngineError::PromptTooLong`] when the last turn alone leaves no position to reply in; with
/// a little room it is kept, and the reply is cut short.
pub fn fit_conversation(
    messages: &[ChatMessage],
    n_ctx: usize,
    reply_room: usize,
    mut encode: impl FnMut(&[ChatMessage]) -> Result<Vec<u32>>,
) -> Result<FittedConversation> {
    let mut messages = messages.to_vec();
    let mut dropped = 0;
    loop {
        let tokens = encode(&messages)?;
        let first = messages
            .iter()
            .position(|m| m.role != "system")
            .unwrap_or(messages.len());
        let last_turn = !messages[first..].iter().skip(1).any(|m| m.role == "user");
        if tokens.len() + reply_room.max(1) <= n_ctx || last_turn {
            if tokens.len() >= n_ctx {
                return Err(EngineError::PromptTooLong {
                    n_prompt: tokens.len(),
                    n_ctx: n_ctx as u32,
                }
                .into());
            }
            return Ok(FittedConversation {
                messages,
                tokens,
                dropped,
            });
        }
        let end = messages[first + 1..]
            .iter()
            .position(|m| m.role == "user")
            .map_or(messages.len(), |i| first + 1 + i);
        // System messages inside the dropped turns stay, as those before them do.
        let mut k = first;
        let mut end = end;
        while k < end {
            if messages[k].role == "system" {
                k += 1;
            } else {
                messages.remove(k);
                dropped += 1;
                end -= 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One token per message plus one per word: enough to see which messages are kept.
    fn encode(m: &[ChatMessage]) -> Result<Vec<u32>> {
        let n: usize = m
            .iter()
            .map(|m| 1 + m.content.split_whitespace().count())
            .sum();
        Ok(vec![0; n])
    }

    fn conversation() -> Vec<ChatMessage> {
        vec![
            ChatMessage::new("system", "be brief"),
            ChatMessage::new("user", "one two three"),
            ChatMessage::new("assistant", "four five"),
            ChatMessage::new("user", "six"),
            ChatMessage::new("assistant", "seven eight nine ten"),
            ChatMessage::new("user", "eleven"),
        ]
    }

    #[test]
    fn the_oldest_turns_go_first_and_the_system_message_stays() {
        // 3 + 4 + 3 + 2 + 5 + 2 = 19 tokens.
        let fit = fit_conversation(&conversation(), 100, 10, encode).unwrap();
        assert_eq!((fit.tokens.len(), fit.dropped), (19, 0));
        assert_eq!(fit.messages, conversation());
        let fit = fit_conversation(&conversation(), 22, 10, encode).unwrap();
        assert_eq!((fit.tokens.len(), fit.dropped), (12, 2));
        assert_eq!(fit.messages[0].role, "system");
        assert_eq!(fit.messages[1].content, "six");
        let fit = fit_conversation(&conversation(), 12, 10, encode).unwrap();
        assert_eq!((fit.tokens.len(), fit.dropped), (5, 4));
        assert_eq!(fit.messages.len(), 2);
    }

    #[test]
    fn system_messages_inside_dropped_turns_stay() {
        let mut c = conversation();
        c.insert(3, ChatMessage::new("system", "now in French"));
        // 19 + 4 tokens; 18 positions with 2 for the reply keep the system messages and the
        // last two turns.
        let fit = fit_conversation(&c, 18, 2, encode).unwrap();
        assert_eq!(fit.dropped, 2);
        let kept: Vec<&str> = fit.messages.iter().map(|m| m.content.as_str()).collect();
        assert_eq!(
            kept,
            [
                "be brief",
                "now in French",
                "six",
                "seven eight nine ten",
                "eleven"
            ]
        );
    }

    #[test]
    fn a_last_message_alone_too_long_is_refused() {
        // System and last message: 5 tokens, so a context of 5 leaves no room to reply.
        let e = fit_conversation(&conversation(), 5, 10, encode).unwrap_err();
        assert!(e.to_string().contains("has 5 tokens"), "{e}");
        // With one position left it is kept, whatever room was asked for.
        let fit = fit_conversation(&conversation(), 6, 10, encode).unwrap();
        assert_eq!(fit.tokens.len(), 5);
    }
}
